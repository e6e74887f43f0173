//! Launching (filled below).
