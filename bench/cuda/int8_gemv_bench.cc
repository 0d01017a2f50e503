// Placeholder (issue 6): being written.
