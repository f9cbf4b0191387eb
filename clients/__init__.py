"""The ClientApp and the client half of the method adapter: local objectives, and split
learning's backbone hosts."""
