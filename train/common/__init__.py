"""What every train/ entrypoint shares: option validation, the output folder, stop requests,
resume checks, progress within an epoch (``train.kge`` and ``train.mf`` import these;
nothing here knows either task)."""
