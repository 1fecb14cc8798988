//! Classification of failed and stuck releases (pure) over evidence gathered by `cluster`.
