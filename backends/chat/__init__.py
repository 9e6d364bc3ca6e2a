"""Chat with images and text: the engine that generates for a batch of rows (`engine`), the
fused decoding loop for Llama text models (`decode`), per-row sampling, stop strings and
streaming (`sampling`), validation and conversation history (`service`), and the settings the
chat models share (`settings`)."""
