using System.Buffers;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Transport.Winsock.Listener;

/// <summary>
/// Binds every TCP <see cref="IPEndPoint"/>; other endpoints (Unix domain sockets, named pipes, file
/// handles) are left to the other transports Kestrel has registered.
/// </summary>
internal sealed class WinsockTransportFactory : IConnectionListenerFactory, IConnectionListenerFactorySelector
{
    private readonly WinsockTransportOptions _options;
    private readonly WinsockTransportCounters _counters;
    private readonly IMemoryPoolFactory<byte>? _memoryPoolFactory;
    private readonly ILogger _logger;

    public WinsockTransportFactory(
        IOptions<WinsockTransportOptions> options,
        WinsockTransportCounters counters,
        ILoggerFactory loggerFactory,
        IMemoryPoolFactory<byte>? memoryPoolFactory = null)
    {
        // Reading Value runs the validator: bad options fail here, naming the option.
        _options = options.Value;
        _counters = counters;
        _memoryPoolFactory = memoryPoolFactory;
        _logger = loggerFactory.CreateLogger("Transport.Winsock");
    }

    public bool CanBind(EndPoint endpoint) => endpoint is IPEndPoint;

    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        if (endpoint is not IPEndPoint ipEndPoint)
        {
            throw new NotSupportedException($"The Winsock reuse transport binds TCP endpoints (IPEndPoint) only; {endpoint.GetType().Name} '{endpoint}' is not supported.");
        }

        var listenSocket = ListenSocket.Bind(ipEndPoint, _options.Backlog);
        // The same pinned-block pool Kestrel's own transports take, when Kestrel has registered it.
        var memoryPool = _memoryPoolFactory?.Create(new MemoryPoolOptions { Owner = "winsock" }) ?? MemoryPool<byte>.Shared;
        var listener = new WinsockConnectionListener(listenSocket, memoryPool, _options, _counters, _logger);
        listener.Start();
        return new ValueTask<IConnectionListener>(listener);
    }
}
