"""The store the research agents read from: papers, fork code and diffs, backend gaps."""
