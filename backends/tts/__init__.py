"""Text to speech: what every architecture shares (`engine`), one module per architecture
(`vits`, `speecht5`, `piper` over the Piper voice model in `piper_model`), and the settings the
TTS models share (`settings`)."""
