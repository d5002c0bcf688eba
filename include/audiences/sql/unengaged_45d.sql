-- Received email or SMS in the last 45 days (engaged_since .. as_of) but opened or clicked nothing.
SELECT c.customer_id, c.email, c.phone
FROM customers c
WHERE EXISTS (
    SELECT 1 FROM message_sends m
    WHERE m.customer_id = c.customer_id AND m.sent_at >= :engaged_since AND m.sent_at <= :as_of
)
AND NOT EXISTS (
    SELECT 1 FROM cio_send_log s
    WHERE s.customer_id = c.customer_id
      AND s.status IN ('opened', 'clicked')
      AND s.occurred_at >= :engaged_since
)
