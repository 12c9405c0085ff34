"""Artifact store: TUF metadata, targets and blobs behind one small port (filesystem or S3)."""
