"""What every train/ entrypoint shares: option validation, the output folder, stop requests,
resume checks (``train.kge`` and ``train.mf`` import these; nothing here knows either task)."""
