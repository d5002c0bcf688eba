"""Meta Custom Audiences."""
