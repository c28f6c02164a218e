"""File formats: MRC maps and stacks, RELION STAR tables. Writes are atomic (temp file + rename)."""
