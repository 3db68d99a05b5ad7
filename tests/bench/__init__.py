"""`make bench`: Vigil measured on this machine, beside a baseline run in the same process."""
