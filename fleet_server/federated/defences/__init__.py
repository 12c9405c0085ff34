"""Robust-aggregation defences composed by `pipeline.Defended` behind the `robust-<rule>` names.

One small module per defence, each pure numpy over flat update vectors (rows = devices):
`head` (the server's root-set view of a softmax head), `reputation` (FLTrust-style trust from the
server's own update, kept per device across rounds and runs), `clipping` (adaptive norm clipping,
centered clipping), `bucketing`, `sybil` (near-identical updates count once), `flame` (cosine
clustering), `dormant` (coordinate-wise median where clean data never activates the feature),
`validation` (accept a round only if the aggregate does not get worse on the server's data),
`secure` (what of this still applies under secure aggregation). No I/O, no clocks.
"""
