"""SoundStream-style neural audio codec. Planned: issue 5."""
