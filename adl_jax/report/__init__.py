"""HTML pages of results: self-contained files with inline SVG figures."""
