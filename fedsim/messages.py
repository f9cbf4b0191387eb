"""The message contract between the two adapters (fedsim.servers, fedsim.clients): the names
of the records a train message and its reply carry, and of the adapter's config keys."""

# RecordDict keys: the vector in its wire format, float32 side arrays, the adapter's
# config, the method's round settings, the reply's metrics and uplink format
ARRAYS, EXTRA, CONFIG, ROUND, METRICS, UPLINK = (
    "arrays",
    "extra",
    "config",
    "round",
    "metrics",
    "uplink",
)
# CONFIG keys
SERVER_ROUND, SPEC, MODEL_CODEC, LAST_USED = "server-round", "spec", "model-codec", "last-used"
CODEC = "codec"  # UPLINK's key: the codec spec of the reply's vector
