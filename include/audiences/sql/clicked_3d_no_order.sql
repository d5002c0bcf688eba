-- Clicked a message in the last 3 days (clicked_since .. as_of) and has not ordered since the click.
SELECT c.customer_id, c.email, c.phone
FROM customers c
WHERE EXISTS (
    SELECT 1
    FROM cio_send_log s
    WHERE s.customer_id = c.customer_id
      AND s.status = 'clicked'
      AND s.occurred_at >= :clicked_since
      AND s.occurred_at <= :as_of
      AND NOT EXISTS (
          SELECT 1 FROM orders o
          WHERE o.customer_id = s.customer_id AND o.created_at >= s.occurred_at AND o.created_at <= :as_of
      )
)
