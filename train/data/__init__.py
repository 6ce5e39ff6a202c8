"""Training data: the recipe's data section -> datasets (`sources`), shards as prior data
(`shards`), and the deterministic, resumable, process-split batches the loop draws (`loader`).
The datasets themselves live with their models (`tokenizers_ae.data`, `audio_codec.data`)."""
