"""Speech to text: the Whisper engine (`engine`), its settings (`settings`), and how rows with
equal options are grouped into one `generate()` call (`batching`)."""
