//! Discovery of one service's instances (being written).
