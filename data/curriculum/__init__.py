"""Curriculum learning: difficulty scores, pacing functions and the document order they give."""
