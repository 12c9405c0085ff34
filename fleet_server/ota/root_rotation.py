"""Root rotation, offline: root N+1 built and signed on the operator's machine (`edgeloop keys
rotate-root`), where the root keys stay.

Owns building the new root from the current one. Does not store or verify it: the server accepts
it with `OtaRepository.install_root` (repository.py).
"""

from __future__ import annotations

from copy import deepcopy
from datetime import datetime
from typing import Any

from tuf.api.metadata import Metadata, Root  # type: ignore[attr-defined]
from tuf.api.serialization.json import JSONSerializer

_SERIALIZER = JSONSerializer(compact=True)


def rotate_root(
    current: bytes,
    *,
    old_signers: list[Any],
    new_keys: list[Any],
    threshold: int,
    new_signers: list[Any],
    expires: datetime,
) -> bytes:
    """Build root N+1 with `new_keys`/`threshold` for the root role, signed by old and new keys.

    Runs on the operator's machine (root keys stay offline); the server only verifies and stores.
    """
    md = Metadata[Root].from_bytes(current)
    root = deepcopy(md.signed)
    for keyid in list(root.roles[Root.type].keyids):
        root.revoke_key(keyid, Root.type)
    for key in new_keys:
        root.add_key(key, Root.type)
    root.roles[Root.type].threshold = threshold
    root.version += 1
    root.expires = expires.replace(microsecond=0)
    new_md = Metadata(root)
    seen: set[str] = set()
    for signer in [*old_signers, *new_signers]:
        if signer.public_key.keyid not in seen:
            seen.add(signer.public_key.keyid)
            new_md.sign(signer, append=True)
    return new_md.to_bytes(_SERIALIZER)
