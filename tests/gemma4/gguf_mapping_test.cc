// Tests arrive with the mapping implementation.
