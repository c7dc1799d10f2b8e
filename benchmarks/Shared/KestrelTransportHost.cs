using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Transport.Benchmarks.Shared;

/// <summary>
/// Gets a transport the way Kestrel gets it, for both benchmark projects (linked into each): the
/// services of a host with <c>UseKestrel()</c>, plus <c>AddWinsockReuseTransport()</c> or not, so both
/// transports share Kestrel's registrations (memory pool factory, options, logging). The host is never
/// started; only its services are used.
/// </summary>
internal static class KestrelTransportHost
{
    /// <summary>The host's services and the factory Kestrel would bind <paramref name="endPoint"/> with; the caller disposes the host.</summary>
    public static (IHost Host, IConnectionListenerFactory Factory) Create(bool winsock, EndPoint endPoint, Action<Transport.Winsock.WinsockTransportOptions>? configure = null)
    {
        var host = new HostBuilder()
            // No logging providers for either transport: nothing is formatted or written in the measured path.
            .ConfigureLogging(static logging => logging.ClearProviders())
            .ConfigureWebHost(web =>
            {
                web.UseKestrel();
                if (winsock)
                {
                    web.ConfigureServices(services => services.AddWinsockReuseTransport(configure));
                }

                // A web host only needs an application to build.
                web.Configure(static _ => { });
            })
            .Build();

        var factory = Select(host.Services, endPoint);
        var expected = winsock ? "WinsockTransportFactory" : "SocketTransportFactory";
        if (factory.GetType().Name != expected)
        {
            host.Dispose();
            throw new InvalidOperationException($"Kestrel would bind {endPoint} with {factory.GetType().FullName}, not {expected}.");
        }

        return (host, factory);
    }

    /// <summary>Disposes a host built by <see cref="Create"/>.</summary>
    public static async ValueTask DisposeAsync(IHost host)
    {
        if (host is IAsyncDisposable asyncDisposable)
        {
            await asyncDisposable.DisposeAsync().ConfigureAwait(false);
        }
        else
        {
            host.Dispose();
        }
    }

    // Kestrel's TransportManager: registrations newest first, the first that can bind the endpoint wins.
    private static IConnectionListenerFactory Select(IServiceProvider services, EndPoint endPoint)
    {
        foreach (var factory in services.GetServices<IConnectionListenerFactory>().Reverse())
        {
            if (factory is not IConnectionListenerFactorySelector selector || selector.CanBind(endPoint))
            {
                return factory;
            }
        }

        throw new InvalidOperationException($"No IConnectionListenerFactory can bind {endPoint}.");
    }
}
