"""Running a collection: targets, planning work items, local and Ray execution, saving .mat files."""
