from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DriftEpisodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIFT_EPISODE_STATE_UNSPECIFIED: _ClassVar[DriftEpisodeState]
    DRIFT_EPISODE_OPEN: _ClassVar[DriftEpisodeState]
    DRIFT_EPISODE_CLOSED: _ClassVar[DriftEpisodeState]
DRIFT_EPISODE_STATE_UNSPECIFIED: DriftEpisodeState
DRIFT_EPISODE_OPEN: DriftEpisodeState
DRIFT_EPISODE_CLOSED: DriftEpisodeState

class DriftEvidence(_message.Message):
    __slots__ = ("channel", "kind", "feature", "statistic", "threshold", "window_rows")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    channel: str
    kind: str
    feature: str
    statistic: float
    threshold: float
    window_rows: int
    def __init__(self, channel: _Optional[str] = ..., kind: _Optional[str] = ..., feature: _Optional[str] = ..., statistic: _Optional[float] = ..., threshold: _Optional[float] = ..., window_rows: _Optional[int] = ...) -> None: ...

class DriftEpisode(_message.Message):
    __slots__ = ("episode_id", "stream", "state", "model_name", "model_version", "start_sample", "detected_sample", "end_sample", "opened_ms", "closed_ms", "severity", "evidence", "budget_per_10k", "samples_seen", "monitor_id", "reported_sample")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    START_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    DETECTED_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    END_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    OPENED_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_MS_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PER_10K_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_SEEN_FIELD_NUMBER: _ClassVar[int]
    MONITOR_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTED_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    episode_id: int
    stream: str
    state: DriftEpisodeState
    model_name: str
    model_version: str
    start_sample: int
    detected_sample: int
    end_sample: int
    opened_ms: int
    closed_ms: int
    severity: float
    evidence: _containers.RepeatedCompositeFieldContainer[DriftEvidence]
    budget_per_10k: float
    samples_seen: int
    monitor_id: str
    reported_sample: int
    def __init__(self, episode_id: _Optional[int] = ..., stream: _Optional[str] = ..., state: _Optional[_Union[DriftEpisodeState, str]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., start_sample: _Optional[int] = ..., detected_sample: _Optional[int] = ..., end_sample: _Optional[int] = ..., opened_ms: _Optional[int] = ..., closed_ms: _Optional[int] = ..., severity: _Optional[float] = ..., evidence: _Optional[_Iterable[_Union[DriftEvidence, _Mapping]]] = ..., budget_per_10k: _Optional[float] = ..., samples_seen: _Optional[int] = ..., monitor_id: _Optional[str] = ..., reported_sample: _Optional[int] = ...) -> None: ...

class FeatureBins(_message.Message):
    __slots__ = ("feature", "counts")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    feature: str
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, feature: _Optional[str] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class DriftSketch(_message.Message):
    __slots__ = ("model_name", "model_version", "monitor_id", "from_ms", "to_ms", "samples", "samples_total", "bins", "bad_shape", "missing", "nonfinite", "bad_outputs", "bad_labels", "episodes_opened_total", "budget_per_10k", "open_episodes")
    class MissingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class NonfiniteEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MONITOR_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_MS_FIELD_NUMBER: _ClassVar[int]
    TO_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    BAD_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    NONFINITE_FIELD_NUMBER: _ClassVar[int]
    BAD_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BAD_LABELS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_OPENED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PER_10K_FIELD_NUMBER: _ClassVar[int]
    OPEN_EPISODES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    monitor_id: str
    from_ms: int
    to_ms: int
    samples: int
    samples_total: int
    bins: _containers.RepeatedCompositeFieldContainer[FeatureBins]
    bad_shape: int
    missing: _containers.ScalarMap[str, int]
    nonfinite: _containers.ScalarMap[str, int]
    bad_outputs: int
    bad_labels: int
    episodes_opened_total: int
    budget_per_10k: float
    open_episodes: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., monitor_id: _Optional[str] = ..., from_ms: _Optional[int] = ..., to_ms: _Optional[int] = ..., samples: _Optional[int] = ..., samples_total: _Optional[int] = ..., bins: _Optional[_Iterable[_Union[FeatureBins, _Mapping]]] = ..., bad_shape: _Optional[int] = ..., missing: _Optional[_Mapping[str, int]] = ..., nonfinite: _Optional[_Mapping[str, int]] = ..., bad_outputs: _Optional[int] = ..., bad_labels: _Optional[int] = ..., episodes_opened_total: _Optional[int] = ..., budget_per_10k: _Optional[float] = ..., open_episodes: _Optional[int] = ...) -> None: ...
