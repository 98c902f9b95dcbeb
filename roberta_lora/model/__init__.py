"""The model: `LoraWrapperRoberta` (one adapter on a frozen encoder) and everything it is made of:
`AdapterConfig` (`config`), the supported encoder families and their transformers classes (`families`),
heads, the base loader, which tensors an adapter holds (`tensors`),
adapter tensor files, standalone (merged) models, QLoRA loading and toy checkpoints for tests.
Imports `lora` and the package's bottom modules only."""
