-- Shoppers who added to cart in the last 6 hours (cart_since .. as_of) and have not ordered since
-- that cart. Bound parameters keep the SQL identical on SQLite and Postgres.
SELECT c.customer_id, c.email, c.phone
FROM customers c
WHERE EXISTS (
    SELECT 1
    FROM carts k
    WHERE k.customer_id = c.customer_id
      AND k.created_at >= :cart_since
      AND k.created_at <= :as_of
      AND NOT EXISTS (
          SELECT 1
          FROM orders o
          WHERE o.customer_id = k.customer_id
            AND o.created_at >= k.created_at
            AND o.created_at <= :as_of
      )
)
