"""Google Customer Match through the Google Ads API (allowlisted developer tokens)."""
