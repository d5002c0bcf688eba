"""Sources of audience membership. Each yields batches of plain row dicts; staging does the rest."""
