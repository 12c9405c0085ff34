"""edgeloop compiler: turns a trained model into device-ready, validated artifacts."""
