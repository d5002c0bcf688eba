-- Unsubscribed or marked a message as spam, ever: do not contact, anywhere.
SELECT DISTINCT c.customer_id, c.email, c.phone
FROM customers c
JOIN cio_send_log s ON s.customer_id = c.customer_id
WHERE s.status IN ('unsubscribed', 'spammed')
  AND s.occurred_at <= :as_of
