"""Media core: MP4 index, segmenter, playlists and muxers. Knows nothing about HTTP."""
