using System.Net;
using System.Net.Http;
using Transport.Winsock.Outbound;

namespace Transport.Winsock;

/// <summary>Ways into the outbound side for clients that are not written against <see cref="Microsoft.AspNetCore.Connections.IConnectionFactory"/>.</summary>
public static class WinsockReuse
{
    /// <summary>
    /// A <see cref="SocketsHttpHandler.ConnectCallback"/> whose connections come from
    /// <paramref name="factory"/>, so HttpClient (and YARP and gRPC clients on a SocketsHttpHandler) run on
    /// them: <c>handler.ConnectCallback = WinsockReuse.CreateConnectCallback(factory)</c>. The handler's own
    /// ConnectTimeout and cancellation apply; a refused or timed-out connect surfaces as it does with the
    /// handler's own connect (an <see cref="HttpRequestException"/> around the <see cref="System.Net.Sockets.SocketException"/>).
    /// The stream's Dispose ends the connection gracefully. The factory stays the caller's to dispose.
    /// </summary>
    public static Func<SocketsHttpConnectionContext, CancellationToken, ValueTask<Stream>> CreateConnectCallback(WinsockOutboundConnectionFactory factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        return async (context, cancellationToken) =>
        {
            var connection = await factory.ConnectAsync(context.DnsEndPoint, cancellationToken).ConfigureAwait(false);
            return new ConnectionStream(connection);
        };
    }

    /// <summary>
    /// <see cref="CreateConnectCallback(WinsockOutboundConnectionFactory)"/> on a factory of its own, made
    /// with <paramref name="options"/> (checked now), that lives as long as the process, as a handler's
    /// connection pool usually does.
    /// </summary>
    public static Func<SocketsHttpConnectionContext, CancellationToken, ValueTask<Stream>> CreateConnectCallback(WinsockOutboundOptions? options = null)
        => CreateConnectCallback(new WinsockOutboundConnectionFactory(options));
}
