"""query-state: a Flower App of train and query messages and state kept across rounds."""
