//! Aligned text tables for a terminal, as rpk prints them: upper-case
//! headers, columns padded to their widest cell, two spaces apart.

/// Renders `rows` under `headers`; every row has as many cells as there
/// are headers. Ends with a newline.
pub(crate) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        debug_assert_eq!(row.len(), headers.len());
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', widths[i].saturating_sub(cell.chars().count())));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A cell for an optional value: the value, or `-`.
pub(crate) fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let rows = vec![vec!["a-long-name".to_owned(), "1".to_owned()], vec!["b".to_owned(), "12345".to_owned()]];
        assert_eq!(render(&["NAME", "N"], &rows), "NAME         N\na-long-name  1\nb            12345\n");
        assert_eq!(render(&["ONLY"], &[]), "ONLY\n");
    }
}
