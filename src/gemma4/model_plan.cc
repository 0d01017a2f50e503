// Implementation in progress (issue 5).
