"""Separation: building Open-Unmix separators, offline and streaming separation, and their speed."""
