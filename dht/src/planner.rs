//! (filled by the DHT issue)
