"""Looking inside: layer-wise probes, the attention page, parity with transformers, the walkthrough."""
