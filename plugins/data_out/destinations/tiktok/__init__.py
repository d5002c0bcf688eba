"""TikTok segment mapping."""
