"""Emotion: recognisers (8 AffectNet classes + valence/arousal), EMOCA's metrics, the EmoDECA
protocol, the emotion-consistency loss, expression presets and training."""
