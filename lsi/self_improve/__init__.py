"""Self-improvement data: sampling reasoning paths, majority voting, the four training formats."""
