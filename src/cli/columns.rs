//! Plain aligned text tables, kubectl style: upper-case headers, columns separated by three
//! spaces, no borders.

pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    render_painted(headers, rows, |_, _| None)
}

/// The same table with some body cells coloured: `paint(column, cell)` gives an ANSI SGR code
/// (`"31"`) or None. Widths count the visible text only, so colour never moves a column.
pub fn render_painted(headers: &[&str], rows: &[Vec<String>], paint: impl Fn(usize, &str) -> Option<&'static str>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>, body: bool| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            match paint(i, cell).filter(|_| body) {
                Some(code) => out.push_str(&format!("\x1b[{code}m{cell}\x1b[0m")),
                None => out.push_str(cell),
            }
            if i < last {
                out.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), false);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), true);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let t = super::render(&["NAME", "REV"], &[vec!["shop".into(), "12".into()], vec!["a-long-name".into(), "1".into()]]);
        assert_eq!(t, "NAME          REV\nshop          12\na-long-name   1\n");
    }
}
