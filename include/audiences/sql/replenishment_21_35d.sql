-- Customers in the reorder window last order between 35 (window_start) and 21 (window_end) days ago.
SELECT c.customer_id, c.email, c.phone
FROM customers c
JOIN (
    SELECT customer_id, MAX(created_at) AS last_order_at
    FROM orders
    WHERE created_at <= :as_of
    GROUP BY customer_id
) o ON o.customer_id = c.customer_id
WHERE o.last_order_at >= :window_start
  AND o.last_order_at < :window_end
