-- Anyone who ordered in the last 7 days (purchased_since .. as_of) a suppression audience.
SELECT c.customer_id, c.email, c.phone
FROM customers c
WHERE EXISTS (
    SELECT 1
    FROM orders o
    WHERE o.customer_id = c.customer_id
      AND o.created_at >= :purchased_since
      AND o.created_at <= :as_of
)
