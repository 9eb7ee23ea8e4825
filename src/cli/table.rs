//! Aligned text tables for `incidents`, `samples` and `status`: column
//! widths computed from the cells (in characters), the last column left
//! unpadded so a long reason or detail never pushes trailing spaces.

/// How a column lines up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// `header` and `rows` as lines, each column as wide as its widest cell,
/// two spaces between columns.
pub fn render(header: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            let last = i + 1 == cells.len();
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Right => {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
                Align::Left => {
                    out.push_str(cell);
                    if !last {
                        out.push_str(&" ".repeat(pad));
                    }
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_cell_widths() {
        let rows = vec![
            vec![
                "#1".into(),
                "a-long-probe-name".into(),
                "1.0ms".into(),
                "x".into(),
            ],
            vec!["#10".into(), "p".into(), "1234.5ms".into(), "détail".into()],
        ];
        let text = render(
            &["ID", "PROBE", "LATENCY", "DETAIL"],
            &[Align::Left, Align::Left, Align::Right, Align::Left],
            &rows,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ID   PROBE               LATENCY  DETAIL",
                "#1   a-long-probe-name     1.0ms  x",
                "#10  p                  1234.5ms  détail",
            ]
        );
    }
}
