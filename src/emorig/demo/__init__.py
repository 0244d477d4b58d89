"""``emorig demo`` and ``emorig ablation``: the whole system on the embedded default (the
built-in synthetic head), with nothing downloaded. These compose every stage, training
included, which is why they sit above the library with the CLI."""

from emorig.demo.run import DEMO_SIZE, DemoConfig, DemoResult, encoder_reconstruct, run_demo

__all__ = ["DEMO_SIZE", "DemoConfig", "DemoResult", "encoder_reconstruct", "run_demo"]
