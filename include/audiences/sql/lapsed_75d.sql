-- Customers whose most recent order is older than 75 days (lapsed_before).
SELECT c.customer_id, c.email, c.phone
FROM customers c
JOIN (
    SELECT customer_id, MAX(created_at) AS last_order_at
    FROM orders
    WHERE created_at <= :as_of
    GROUP BY customer_id
) o ON o.customer_id = c.customer_id
WHERE o.last_order_at < :lapsed_before
