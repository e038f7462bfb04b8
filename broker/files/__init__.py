"""Files attached to chat messages: the per-workflow policy, content sniffing, signed upload
and preview capabilities, streamed uploads and the storage the bytes live in (never the
thread database)."""
