"""More than one adapter, and adapters in other formats: the bank of named adapters (switching,
disabling), mixed-task batches, weighted combinations, merged checkpoints on disk, PEFT interop
and warm starts. Everything here goes through `LoraWrapperRoberta`'s public methods."""
