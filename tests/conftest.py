"""pytest configuration shared by every test; helpers live in tests/helpers.py."""
